"""Model-family code (EEG, ...): heavy ML libraries are imported only inside the family modules."""
