"""FAISS index builds, the recall gate and the blue-green swap."""
