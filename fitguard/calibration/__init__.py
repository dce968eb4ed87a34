"""``fitguard calibrate``: the detector's threshold set from a deployment's own photos, with a guarantee
(:mod:`.command`), from a scored sample (:mod:`.sample`), with its report (:mod:`.report`)."""
