"""ASR side: tokenizer, CTC decoding, WER scoring."""
