"""The names stages share: artifacts in the store, the files inside them, the tables.

One stage writes each of these and later stages (or serving) read it, so the names
live here, in the core, and nowhere else: a stage imports this module, never the
stage that wrote the artifact. Versions are read from the artifact store
(``ArtifactStore.read_manifest``); this module holds no logic.
"""

from __future__ import annotations

# ---- artifacts (``<root>/<name>/<version>/`` in the store)
FEATURES = "features"  # the feature stage's output (features/job.py)
FEATURES_PLAN = "features-plan"  # the event files a planned features version reads
FEATURES_QUARANTINE = "features-quarantine"  # the rows the contract refused, per version
# One event day's refused rows (incremental), stored once: a features version's
# quarantine lists the window's in QUARANTINE_DAYS_FILE rather than copying them.
FEATURES_QUARANTINE_DAY = "features-quarantine-day"
FEATURES_DAY = "features-day"  # one event day's valid events and partials (incremental)
FEATURES_HISTORY = "features-history"  # one day's watch plays with their history
FEATURES_RECENT = "features-recent"  # per user, the last watches as of one day's end
MODEL = "models/two-tower"  # a trained two-tower model with its exported embeddings
INDEX = "index"  # a built, gated FAISS index
DELTA_INDEX = "index-delta"  # the hourly delta: videos published since INDEX's model
EVALUATION = "evaluation"  # an offline evaluation report
RANKING_EXAMPLES = "ranking-examples"  # retrieval's candidates labelled by outcomes
RANKER = "models/ranker"  # a trained stage-2 ranker (ranking/)

# ---- pointers (``_pointers/<name>.json``)
INDEX_POINTER = "index"  # the blue-green slots and the active index version
DELTA_POINTER = "index-delta"  # the live delta version and the index version it extends
RANKER_POINTER = "ranker"  # the served ranker version (the champion, or a manual rollback)
# ``holds/<artifact name>``: the readers' holds on versions of that artifact and the
# collections' marks on those they delete (videorec.retention)
HOLDS_POINTER = "holds"

# ---- files inside a model version
CHECKPOINT_FILE = "model.pt"  # weights + the model config (training.train)
# The validation phase's model: trained only on examples before each user's validation
# boundary, so the ranking stage can retrieve candidates the model never trained on.
VALIDATION_CHECKPOINT_FILE = "model_validation.pt"
VIDEO_EMBEDDINGS_FILE = "video_embeddings.parquet"  # video_id, embedding (d,) float32
USER_EMBEDDINGS_FILE = "user_embeddings.parquet"  # user_id, embedding (d,) float32

# ---- files inside a ranking-examples and a ranker version
RANKING_PAIRS_FILE = "pairs.parquet"  # user, video, time, features (F,), labels
RANKER_CHECKPOINT_FILE = "ranker.pt"  # torch weights + RankerConfig
RANKER_WEIGHTS_FILE = "ranker.npz"  # the same weights for the numpy runtime (serving)
NEIGHBOURS_FILE = "neighbours.npz"  # item ids + the co-visitation CSR the ranker reads

# ---- files inside an index version
INDEX_FILE = "index.faiss"
ID_MAP_FILE = "id_map.parquet"
NEW_VIDEOS_FILE = "new_videos.parquet"  # a delta's video_id, embedding (d,), published_at

# ---- tables inside a features version (Spark output folders of Parquet parts)
EXAMPLES = "examples"  # positive plays of the training span with their history
EVAL = "eval"  # every play of the hold-out span
VIDEO_FEATURES = "video_features"  # per video, training span (+ sampling_prob for logQ)
USER_FEATURES = "user_features"  # per user, training span
TRENDING = "trending"  # per video views in the hour and day before the window's end
WATCHED = "watched"  # every (user, video) played in the whole window, capped per user
ONLINE_USER_FEATURES = "online_user_features"  # per user, the whole window: for serving
ONLINE_VIDEO_FEATURES = "online_video_features"  # per video, the whole window: for serving
QUALITY_REPORT = "quality_report.json"

# ---- inside a features-quarantine version
QUARANTINE_EVENTS = "watch_events"  # the window's refused event rows (the one-pass stage)
QUARANTINE_DAYS_FILE = "days.json"  # or, incremental: the window's features-quarantine-day versions
QUARANTINE_DIMENSIONS = "dimensions"  # <table>.parquet: the dimension tables' refused rows
QUARANTINE_DAY_TABLE = "quarantine"  # inside a features-quarantine-day version: its rows
