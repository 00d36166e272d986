"""The Spark feature stage: watch events into training examples, features and a hold-out."""
