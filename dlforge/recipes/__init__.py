"""One recipe per task: classify, language_model, seq2seq, denoise (see base.py for the contract)."""
