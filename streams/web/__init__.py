"""The HTTP side of journeymap: the dashboard (HTML over the analyst tables) and the serving API
(one customer's live state from Redis), in one FastAPI app started by `journeymap dashboard`."""
