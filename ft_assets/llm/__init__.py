"""Talking to Azure OpenAI, OpenAI or an OpenAI-compatible server through the real ``openai`` client."""
