"""Creators' accounts: sign-up, passwords, sessions, API tokens, login back-off and payout address."""
