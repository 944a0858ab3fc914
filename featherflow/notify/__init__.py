"""Notifications: channels, payloads, transports, delivery."""
