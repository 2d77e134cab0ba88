// Ready-to-run code for the playground's request, in curl, Python, JavaScript and Java.
const q = (s) => JSON.stringify(s);

function pyLiteral(value, indent = 0) {
  const pad = " ".repeat(indent);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => `${pad}    ${pyLiteral(v, indent + 4)}`).join(",\n")},\n${pad}]`;
  }
  if (value && typeof value === "object")
    return `{${Object.entries(value).map(([k, v]) => `${q(k)}: ${pyLiteral(v, indent)}`).join(", ")}}`;
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null || (typeof value === "number" && !Number.isFinite(value))) return "None";
  return JSON.stringify(value);
}

export function samples({ base, key, body }) {
  const url = `${base}/v1/chat/completions`;
  const json = JSON.stringify(body, null, 2);
  const { stream, messages, ...rest } = body;
  const extras = Object.entries(rest)
    .filter(([k]) => k !== "model")
    .map(([k, v]) => `    ${k}=${pyLiteral(v)},\n`)
    .join("");
  return {
    curl: `curl ${url} \\\n  -H "Authorization: Bearer ${key}" \\\n  -H "Content-Type: application/json" \\\n  ${stream ? "-N " : ""}-d '${JSON.stringify(body).replaceAll("'", "'\\''")}'`,
    "Python (openai)": `from openai import OpenAI

client = OpenAI(base_url=${q(base + "/v1")}, api_key=${q(key)})
${stream ? "stream" : "reply"} = client.chat.completions.create(
    model=${q(body.model)},
    messages=${pyLiteral(messages, 4)},
${extras}${stream ? "    stream=True,\n" : ""})
${stream
  ? `for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()`
  : "print(reply.choices[0].message.content)"}
`,
    "Python (requests)": `import json
import requests

body = json.loads(${q(JSON.stringify(body))})
response = requests.post(
    ${q(url)},
    headers={"Authorization": "Bearer ${key}"},
    json=body,
    stream=${stream ? "True" : "False"},
    timeout=120,
)
response.raise_for_status()
${stream
  ? `for line in response.iter_lines():
    if line.startswith(b"data: ") and line != b"data: [DONE]":
        chunk = json.loads(line[6:])
        if chunk["choices"]:
            print(chunk["choices"][0]["delta"].get("content") or "", end="", flush=True)
print()`
  : `print(response.json()["choices"][0]["message"]["content"])`}
`,
    "JavaScript (fetch)": stream
      ? `const response = await fetch(${q(url)}, {
  method: "POST",
  headers: { Authorization: "Bearer ${key}", "Content-Type": "application/json" },
  body: JSON.stringify(${json.replaceAll("\n", "\n  ")}),
});
const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = "";
for (;;) {
  const { done, value } = await reader.read();
  if (done) break;
  buffer += decoder.decode(value, { stream: true });
  const frames = buffer.split("\\n\\n");
  buffer = frames.pop();
  for (const frame of frames) {
    const data = frame.replace(/^data: /, "");
    if (data === "[DONE]") continue;
    const chunk = JSON.parse(data);
    if (chunk.choices?.length) process.stdout.write(chunk.choices[0].delta.content ?? "");
  }
}`
      : `const response = await fetch(${q(url)}, {
  method: "POST",
  headers: { Authorization: "Bearer ${key}", "Content-Type": "application/json" },
  body: JSON.stringify(${json.replaceAll("\n", "\n  ")}),
});
const reply = await response.json();
console.log(reply.choices[0].message.content);`,
    "Java (OkHttp)": `import okhttp3.*;

public class Chat {
    public static void main(String[] args) throws Exception {
        OkHttpClient client = new OkHttpClient();
        String json = ${q(JSON.stringify(body))};
        Request request = new Request.Builder()
            .url(${q(url)})
            .header("Authorization", "Bearer ${key}")
            .post(RequestBody.create(json, MediaType.get("application/json")))
            .build();
        try (Response response = client.newCall(request).execute()) {
            // ${stream ? "Server-sent events: one 'data: {...}' line per chunk, then 'data: [DONE]'." : "A chat.completion JSON object."}
            System.out.println(response.body().string());
        }
    }
}
`,
  };
}
