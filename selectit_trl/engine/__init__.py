"""The models' side: rendering rating and loss requests, batching them, running forward passes, and loading and describing models for the hardware."""
