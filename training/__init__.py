"""Two-tower retrieval: the model, the training task, embedding export, MLflow registry."""
