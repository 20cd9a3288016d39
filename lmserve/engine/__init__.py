"""The engine core: requests, the paged KV cache manager, the scheduler and the step loop."""
