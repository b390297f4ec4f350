"""Motia Example Steps."""
