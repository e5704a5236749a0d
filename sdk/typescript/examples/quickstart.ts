// The same in TypeScript (type-checked by `npm run typecheck`, run with tsx).
import { OzwellClient } from '@ozwell/api';

const client = new OzwellClient({ apiKey: process.env.OZWELL_API_KEY });
const response = await client.chat.completions.create({ model: 'gpt-4', messages: [{ role: 'user', content: 'Hello!' }] });
console.log(response.choices[0]?.message.content);
