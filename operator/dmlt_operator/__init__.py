"""dmlt operator: the TrainingJob and TuningStudy custom resources, reconciled by kopf.

`core` holds what both resources share, `trainingjob` and `tuningstudy` one resource each
(tuningstudy builds on trainingjob, never the other way), `main` starts the operator.
"""
