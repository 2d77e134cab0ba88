// Ready-to-run code for the playground's request, in curl, Python, JavaScript and Java, for each API:
// Chat Completions and Responses (OpenAI's) and Messages (Anthropic's).
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

// How each API is called and read: its path, its headers, and where the text is in its answer.
export const APIS = {
  chat: {
    label: "Chat Completions",
    path: "/v1/chat/completions",
    headers: (key) => ({ Authorization: `Bearer ${key}` }),
    // Python expressions over `data` (a whole answer) and `event` (one streamed data payload).
    pyText: `data["choices"][0]["message"]["content"]`,
    pyDelta: `(event["choices"][0]["delta"].get("content") or "") if event.get("choices") else ""`,
    jsText: `data.choices[0].message.content`,
    jsDelta: `event.choices?.length ? event.choices[0].delta.content ?? "" : ""`,
  },
  responses: {
    label: "Responses",
    path: "/v1/responses",
    headers: (key) => ({ Authorization: `Bearer ${key}` }),
    pyText: `"".join(part["text"] for item in data["output"] if item["type"] == "message" for part in item["content"] if part["type"] == "output_text")`,
    pyDelta: `event["delta"] if event["type"] == "response.output_text.delta" else ""`,
    jsText: `data.output.filter((i) => i.type === "message").flatMap((i) => i.content).map((p) => p.text ?? "").join("")`,
    jsDelta: `event.type === "response.output_text.delta" ? event.delta : ""`,
  },
  messages: {
    label: "Messages",
    path: "/v1/messages",
    headers: (key) => ({ "x-api-key": key, "anthropic-version": "2023-06-01" }),
    pyText: `"".join(block["text"] for block in data["content"] if block["type"] == "text")`,
    pyDelta: `event["delta"].get("text", "") if event["type"] == "content_block_delta" else ""`,
    jsText: `data.content.filter((b) => b.type === "text").map((b) => b.text).join("")`,
    jsDelta: `event.type === "content_block_delta" ? event.delta.text ?? "" : ""`,
  },
};

function sdkSample(api, base, key, body) {
  const { stream, model, ...rest } = body;
  const args = (skip) =>
    Object.entries(rest)
      .filter(([k]) => !skip.includes(k))
      .map(([k, v]) => `    ${k}=${pyLiteral(v, 4)},\n`)
      .join("");
  if (api === "chat")
    return [
      "Python (openai)",
      `from openai import OpenAI

client = OpenAI(base_url=${q(base + "/v1")}, api_key=${q(key)})
${stream ? "stream" : "reply"} = client.chat.completions.create(
    model=${q(model)},
${args([])}${stream ? "    stream=True,\n" : ""})
${stream
  ? `for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()`
  : "print(reply.choices[0].message.content)"}
`,
    ];
  if (api === "responses")
    return [
      "Python (openai)",
      `from openai import OpenAI

client = OpenAI(base_url=${q(base + "/v1")}, api_key=${q(key)})
${stream ? "stream" : "response"} = client.responses.create(
    model=${q(model)},
${args([])}${stream ? "    stream=True,\n" : ""})
${stream
  ? `for event in stream:
    if event.type == "response.output_text.delta":
        print(event.delta, end="", flush=True)
print()`
  : "print(response.output_text)"}
`,
    ];
  // The SDK's own arguments by name; the sampling settings (which newer SDKs no longer name) as extra_body.
  const sampling = Object.fromEntries(Object.entries(rest).filter(([k]) => ["temperature", "top_p", "top_k"].includes(k)));
  const extra = Object.keys(sampling).length ? `    extra_body=${pyLiteral(sampling, 4)},\n` : "";
  const call = `model=${q(model)},\n${args(["temperature", "top_p", "top_k"])}${extra}`;
  return [
    "Python (anthropic)",
    `import anthropic

client = anthropic.Anthropic(base_url=${q(base)}, api_key=${q(key)})
${stream
  ? `with client.messages.stream(
    ${call.trimEnd()}
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()`
  : `message = client.messages.create(
    ${call.trimEnd()}
)
print("".join(block.text for block in message.content if block.type == "text"))`}
`,
  ];
}

export function samples({ base, key, api = "chat", body }) {
  const spec = APIS[api];
  const url = `${base}${spec.path}`;
  const headers = spec.headers(key);
  const json = JSON.stringify(body, null, 2);
  const stream = Boolean(body.stream);
  const curlHeaders = Object.entries(headers).map(([k, v]) => `  -H "${k}: ${v}" \\\n`).join("");
  const jsHeaders = `{ ${Object.entries(headers).map(([k, v]) => `${q(k)}: ${q(v)}`).join(", ")}, "Content-Type": "application/json" }`;
  const [sdkName, sdkCode] = sdkSample(api, base, key, body);
  const javaHeaders = Object.entries(headers).map(([k, v]) => `            .header(${q(k)}, ${q(v)})\n`).join("");
  return {
    curl: `curl ${url} \\\n${curlHeaders}  -H "Content-Type: application/json" \\\n  ${stream ? "-N " : ""}-d '${JSON.stringify(body).replaceAll("'", "'\\''")}'`,
    [sdkName]: sdkCode,
    "Python (requests)": `import json
import requests

body = json.loads(${q(JSON.stringify(body))})
response = requests.post(
    ${q(url)},
    headers=${pyLiteral(headers)},
    json=body,
    stream=${stream ? "True" : "False"},
    timeout=120,
)
response.raise_for_status()
${stream
  ? `for line in response.iter_lines():
    if line.startswith(b"data: ") and line != b"data: [DONE]":
        event = json.loads(line[6:])
        print(${spec.pyDelta}, end="", flush=True)
print()`
  : `data = response.json()
print(${spec.pyText})`}
`,
    "JavaScript (fetch)": stream
      ? `const response = await fetch(${q(url)}, {
  method: "POST",
  headers: ${jsHeaders},
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
    const data = frame.split("\\n").find((line) => line.startsWith("data: "))?.slice(6);
    if (!data || data === "[DONE]") continue;
    const event = JSON.parse(data);
    process.stdout.write(${spec.jsDelta});
  }
}`
      : `const response = await fetch(${q(url)}, {
  method: "POST",
  headers: ${jsHeaders},
  body: JSON.stringify(${json.replaceAll("\n", "\n  ")}),
});
const data = await response.json();
console.log(${spec.jsText});`,
    "Java (OkHttp)": `import okhttp3.*;

public class Chat {
    public static void main(String[] args) throws Exception {
        OkHttpClient client = new OkHttpClient();
        String json = ${q(JSON.stringify(body))};
        Request request = new Request.Builder()
            .url(${q(url)})
${javaHeaders}            .post(RequestBody.create(json, MediaType.get("application/json")))
            .build();
        try (Response response = client.newCall(request).execute()) {
            // ${stream ? "Server-sent events, one JSON payload per 'data:' line." : `The ${spec.label} API's JSON answer.`}
            System.out.println(response.body().string());
        }
    }
}
`,
  };
}
