"""Example bots: echo (with help and ping), reminders, polls."""
