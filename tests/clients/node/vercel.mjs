// The Vercel AI SDK (ai 6) with its three providers: @ai-sdk/openai's chat and Responses models, and
// (AI_SDK_LOG_WARNINGS off: the SDK's warnings go to stdout)
// @ai-sdk/openai-compatible. Each: generateText with tools and Output.object (400 before issue #39), a forced
// call streamed (its first text part must not be an empty one), and a call cut by maxOutputTokens.
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, Output, stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';

const [baseURL, apiKey, model] = process.argv.slice(2);
globalThis.AI_SDK_LOG_WARNINGS = false;
const openai = createOpenAI({ baseURL, apiKey });
const compatible = createOpenAICompatible({ name: 'ozwell', baseURL, apiKey, supportsStructuredOutputs: true });
const providers = { chat: openai.chat(model), responses: openai.responses(model), compatible: compatible(model) };

const report = z.object({ city: z.enum(['Paris', 'Rome', 'Oslo']), degrees: z.union([z.literal(10), z.literal(20), z.literal(30)]) });
const tools = {
  get_time: tool({ description: 'The time in a zone', inputSchema: z.object({ zone: z.number().int().min(-12).max(12) }),
    execute: async () => 'noon' }),
};
const seen = {};
for (const [name, languageModel] of Object.entries(providers)) {
  const entry = {};
  try {
    const result = await generateText({ model: languageModel, tools, output: Output.object({ schema: report }),
      prompt: 'Weather in Paris?', maxOutputTokens: 150, temperature: 1, stopWhen: stepCountIs(3), maxRetries: 0 });
    entry.output = result.output;
  } catch (error) {
    entry.output = { error: error.constructor.name, status: error.statusCode ?? null, message: String(error.message).slice(0, 300) };
  }
  const stream = streamText({ model: languageModel, tools, toolChoice: { type: 'tool', toolName: 'get_time' },
    prompt: 'Time in Oslo?', maxOutputTokens: 120, temperature: 1, maxRetries: 0 });
  const parts = [];
  for await (const part of stream.fullStream) parts.push(part.type === 'text-delta' ? `text:${part.text}` : part.type);
  entry.stream = parts.filter((p) => p.startsWith('text') || p.startsWith('tool-call') || p === 'error');
  const cut = await generateText({ model: languageModel, tools: { get_time: tool({ ...tools.get_time, execute: undefined }) },
    toolChoice: { type: 'tool', toolName: 'get_time' }, prompt: 'Time in Oslo?', maxOutputTokens: 36, temperature: 1, maxRetries: 0 });
  entry.cut = { text: cut.text, finish: cut.finishReason, calls: cut.toolCalls.map((c) => c.toolName),
    content: cut.content.map((c) => c.type) };
  seen[name] = entry;
}
console.log(JSON.stringify(seen));
