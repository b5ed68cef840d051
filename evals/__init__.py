"""The eval suite: ground-truth scenarios, scorers and the runner."""
