"""What selection buys: strategies compared by the models they train (`selectit-trl compare`)."""
