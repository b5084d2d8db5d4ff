"""Evaluation metrics beyond ASR scoring (audio classification)."""
