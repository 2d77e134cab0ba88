// Builds the console into the Python package's static directory (served at "/").
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("../src/chatgate/console/static/", import.meta.url);
await rm(out, { recursive: true, force: true });
await mkdir(new URL("assets/", out), { recursive: true });
await build({
  entryPoints: ["src/app.js"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  outfile: new URL("assets/app.js", out).pathname,
  metafile: false,
  logLevel: "info",
});
await build({
  entryPoints: ["src/app.css"],
  bundle: true,
  minify: true,
  outfile: new URL("assets/app.css", out).pathname,
  logLevel: "info",
});
await build({
  entryPoints: ["src/docs.js", "src/docs.css"], // the API reference at /docs
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  outdir: new URL("assets/", out).pathname,
  logLevel: "info",
});
await copyFile("src/index.html", new URL("index.html", out));
await copyFile("src/docs.html", new URL("docs.html", out));
await copyFile("src/icon.svg", new URL("assets/icon.svg", out)); // the tab's icon: no request for /favicon.ico
