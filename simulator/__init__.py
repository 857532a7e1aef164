"""A customer-journey simulator that knows the ground truth of every journey it writes."""
