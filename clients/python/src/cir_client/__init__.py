"""Python client of the CIR retriever (`cir_client.retriever`)."""
