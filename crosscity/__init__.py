"""crosscity: train one model on data that stays in several cities."""
