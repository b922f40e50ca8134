"""One LM call.

Signatures, adapters (the reply protocols), parsing, strict schemas, predictors
and the predictor call that every LM node makes.
"""

__all__: tuple[str, ...] = ()
