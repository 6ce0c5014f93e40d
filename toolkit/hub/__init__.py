"""Models on the Hugging Face hub and on disk: the hub-id rule, listing and deleting cached models, fetching only the files a backend needs, and saved recipes."""
