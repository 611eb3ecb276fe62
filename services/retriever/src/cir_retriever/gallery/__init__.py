"""Gallery stores: one interface (`base`), the local and Milvus backends, and the types they share."""
