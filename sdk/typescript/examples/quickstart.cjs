// The CommonJS build: require('@ozwell/api').
const { OzwellClient } = require('@ozwell/api');

async function main() {
  const client = new OzwellClient({ apiKey: process.env.OZWELL_API_KEY });
  const response = await client.chat.completions.create({ model: 'gpt-4', messages: [{ role: 'user', content: 'Hello!' }] });
  console.log(response.choices[0].message.content);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
