# The Python equivalent of the API docs' first lines (the TypeScript is in sdk/typescript/examples).
import os

from ozwell import Ozwell

client = Ozwell(api_key=os.environ.get("OZWELL_API_KEY"))
response = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hello!"}])
print(response.choices[0].message.content)
