"""Reusable Textual widgets of flowdeck. They take plain data from engine models and post messages."""
