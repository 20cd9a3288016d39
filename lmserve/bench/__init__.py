"""`lmserve bench serve`: an online load generator for any OpenAI-compatible endpoint.

The flow of one run: `cli` turns the flags into a `config.BenchConfig`; `workload` (what to send) and
`arrivals` (when) feed `runner`, which sends each request through `client` (streaming, timing);
`metrics` summarizes the records and `report` prints them and writes the JSON and the plot.
"""
