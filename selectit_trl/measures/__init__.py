"""What is measured per row (rating probabilities, losses), found in the store or computed."""
