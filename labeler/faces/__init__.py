"""A face's pixels after detection: the aligned crop and its template (:mod:`.align`,
:mod:`.regions`), the detector-box crop (:mod:`.boxcrops`), the face records handed from
detection to the embedder in memory (:mod:`.records`) and the colour-invariant mask cues
(:mod:`.cues`)."""
