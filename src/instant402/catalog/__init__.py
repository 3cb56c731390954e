"""The model catalog synced from OpenRouter: storage, sync, search and curation."""
