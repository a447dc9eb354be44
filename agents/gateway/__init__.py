"""Warden's governed gateway: agents that run elsewhere point an OpenAI client at Warden (agents/gateway/app.py)."""
