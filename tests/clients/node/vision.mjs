// The openai Node SDK (6.x) sends images (issue #38): a base64 data URL to chat completions and to the Responses
// API, and an uploaded file's id (purpose vision) to the Responses API. Prints what it saw as one JSON line.
import crypto from 'node:crypto';
import OpenAI, { toFile } from 'openai';

const [baseURL, apiKey, model, pngBase64] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const url = `data:image/png;base64,${pngBase64}`;
const question = 'What is in this image?';
const seen = {};

const chat = await client.chat.completions.create({ model, max_tokens: 16, temperature: 0,
  messages: [{ role: 'user', content: [{ type: 'text', text: question }, { type: 'image_url', image_url: { url, detail: 'auto' } }] }] });
seen.chat = { text: chat.choices[0].message.content, finish: chat.choices[0].finish_reason,
  promptTokens: chat.usage.prompt_tokens };

const inline = await client.responses.create({ model, max_output_tokens: 16, temperature: 0,
  input: [{ role: 'user', content: [{ type: 'input_text', text: question }, { type: 'input_image', image_url: url, detail: 'auto' }] }] });
const bytes = Buffer.from(pngBase64, 'base64');
const file = await client.files.create({ file: await toFile(bytes, 'picture.png', { type: 'image/png' }), purpose: 'vision' });
const content = Buffer.from(await (await client.files.content(file.id)).arrayBuffer());
const byFile = await client.responses.create({ model, max_output_tokens: 16, temperature: 0,
  input: [{ role: 'user', content: [{ type: 'input_text', text: question }, { type: 'input_image', file_id: file.id, detail: 'auto' }] }] });
seen.responses = {
  inline: { text: inline.output_text, status: inline.status, inputTokens: inline.usage.input_tokens },
  byFile: { text: byFile.output_text, status: byFile.status, inputTokens: byFile.usage.input_tokens },
};
seen.fileSha256 = crypto.createHash('sha256').update(content).digest('hex');
console.log(JSON.stringify(seen));
