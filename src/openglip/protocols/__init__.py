"""The papers' benchmarks as library functions, one module per protocol: ODinW (:mod:`.odinw`), LVIS fixed AP
(:mod:`.lvis`), Flickr30k Entities (:mod:`.flickr`), RefCOCO/+/g (:mod:`.refcoco`), open-vocabulary COCO
(:mod:`.ovcoco`). ``openglip benchmark ...`` runs them; shared helpers live in :mod:`.common`."""
