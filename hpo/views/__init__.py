"""Views: what people read from a study database. ``hpo status``, ``hpo export``, the offline
report (figures and its HTML page), plots, learning-curve PNGs, the dashboard and the study
notes it shows, and where each chain stands. No torch here."""
