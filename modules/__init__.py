"""The model, built from small LoggingModule pieces. Start reading at model.py."""
