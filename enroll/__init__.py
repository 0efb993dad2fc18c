"""Who is who: the gallery store, its FAISS index and the matching rules."""
