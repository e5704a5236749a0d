// The openai Node SDK (6.x): a Responses stream with a forced function call cut by max_output_tokens, whose
// finalResponse() must hold what the events built (issue #39: it held a message with the markup), and the chat
// stream helper with a forced call.
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const getTime = { type: 'function', name: 'get_time', description: 'The time in a zone', strict: true,
  parameters: { type: 'object', properties: { zone: { type: 'integer', minimum: -12, maximum: 12 } },
    required: ['zone'], additionalProperties: false } };
const seen = {};

const stream = client.responses.stream({ model, input: 'Time in Oslo?', tools: [getTime], max_output_tokens: 40,
  tool_choice: { type: 'function', name: 'get_time' } });
const done = [];
stream.on('response.output_item.done', (event) => done.push(event.item));
const final = await stream.finalResponse();
seen.responses = { status: final.status, output: final.output, done, outputText: final.output_text };

const chat = client.chat.completions.stream({ model, messages: [{ role: 'user', content: 'Time in Oslo?' }],
  tools: [{ type: 'function', function: { name: 'get_time', parameters: getTime.parameters, strict: true } }],
  tool_choice: { type: 'function', function: { name: 'get_time' } }, max_tokens: 120, seed: 1 });
const completion = await chat.finalChatCompletion();
const message = completion.choices[0].message;
seen.chat = { content: message.content, calls: message.tool_calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]),
  finish: completion.choices[0].finish_reason };
console.log(JSON.stringify(seen));
