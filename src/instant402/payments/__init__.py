"""x402 payments: the paid route, the facilitator client, the local devnet and the buyer CLI."""
