"""What starts a chain: the post-receive hook, the webhook and their queue."""
