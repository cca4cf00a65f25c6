"""Study set-up and stages: a stage study's settings, creating and joining it, samplers and
pruners, per-trial seeding, the untried-point sampler, the trial budget and counts, what a study
optimises, the chain of stages, the study protocol and its learning-rate window, and what each
stage costs. No torch here."""
