"""Column names and schemas: the one place where column strings are spelled.

Every module refers to columns through these constants (house style rule 7),
so a rename is a one-line change and a typo is an import error, not a bug.
"""

from __future__ import annotations

from pyspark.sql import types as T

# --- input layout (Foursquare Location Matching) ---------------------------
ID = "id"
NAME = "name"
LATITUDE = "latitude"
LONGITUDE = "longitude"
ADDRESS = "address"
CITY = "city"
STATE = "state"
ZIP = "zip"
COUNTRY = "country"
URL = "url"
PHONE = "phone"
CATEGORIES = "categories"
POI = "point_of_interest"
SOURCE = "source"
"""Optional input column: which source (data provider) a row comes from. Training uses
it to leave out pairs its labels never covered (see ``model.label_scope``)."""

INPUT_COLUMNS: tuple[str, ...] = (
    ID,
    NAME,
    LATITUDE,
    LONGITUDE,
    ADDRESS,
    CITY,
    STATE,
    ZIP,
    COUNTRY,
    URL,
    PHONE,
    CATEGORIES,
)
REQUIRED_COLUMNS: tuple[str, ...] = (ID, NAME, LATITUDE, LONGITUDE)
TEXT_COLUMNS: tuple[str, ...] = tuple(c for c in INPUT_COLUMNS if c not in (LATITUDE, LONGITUDE))

# --- bookkeeping columns on stored tables -----------------------------------
SOURCE_FILE = "source_file"
INGESTED_AT = "ingested_at"
REASON = "reason"
RAW_LATITUDE = "raw_latitude"
RAW_LONGITUDE = "raw_longitude"
CORRUPT_RECORD = "_corrupt_record"
"""A CSV line the reader could not split, as text (null for a well-formed line)."""
INPUT_ORDER = "_input_order"
"""Increasing with a row's position in its input (file order for a CSV): which copy of a
duplicated id came first."""
RAW_RECORD = "raw_record"

# --- pair tables -------------------------------------------------------------
ID_L = "id_l"
ID_R = "id_r"
LABEL = "label"
SCORE = "score"
PREDICTION = "prediction"
PASS = "block_pass"
FEATURE_PREFIX = "f_"

# --- output layout -----------------------------------------------------------
MATCHES = "matches"
GROUP_ID = "group_id"
MATCH_COLUMNS: tuple[str, ...] = (ID, MATCHES)
STATUS = "status"
"""What became of an input row in a match run (see :mod:`poimatch.io.triage`)."""

# --- normalized columns (prefix n_) -------------------------------------------
N_NAME = "n_name"
N_ADDRESS = "n_address"
N_CITY = "n_city"
N_ZIP = "n_zip"
N_PHONE = "n_phone"
N_URL = "n_url"
N_CATEGORIES = "n_categories"
N_NAME_TOKENS = "n_name_tokens"


def raw_input_schema(with_poi: bool) -> T.StructType:
    """All columns as strings: typing happens in validation, so bad values are kept."""
    cols = INPUT_COLUMNS + ((POI,) if with_poi else ())
    return T.StructType([T.StructField(c, T.StringType(), True) for c in cols])


def poi_table_schema() -> T.StructType:
    """Schema of the curated POI Delta table."""
    fields = [
        T.StructField(ID, T.StringType(), False),
        T.StructField(NAME, T.StringType(), False),
        T.StructField(LATITUDE, T.DoubleType(), False),
        T.StructField(LONGITUDE, T.DoubleType(), False),
    ]
    fields += [
        T.StructField(c, T.StringType(), True)
        for c in INPUT_COLUMNS
        if c not in (ID, NAME, LATITUDE, LONGITUDE)
    ]
    fields.append(T.StructField(SOURCE, T.StringType(), True))
    fields.append(T.StructField(POI, T.StringType(), True))
    return T.StructType(fields)


# --- feature columns (features.py) ---------------------------------------------
F_DIST_M = FEATURE_PREFIX + "dist_m"
F_LOG_DIST = FEATURE_PREFIX + "log_dist"
F_NAME_LEV = FEATURE_PREFIX + "name_lev"
F_NAME_LEV_NORM = FEATURE_PREFIX + "name_lev_norm"
F_NAME_JW = FEATURE_PREFIX + "name_jw"
F_NAME_TOKEN_SET = FEATURE_PREFIX + "name_token_set"
F_NAME_PARTIAL = FEATURE_PREFIX + "name_partial"
F_NAME_RATIO = FEATURE_PREFIX + "name_ratio"
F_NAME_CONTAINS = FEATURE_PREFIX + "name_contains"
F_NAME_TOKEN_JACCARD = FEATURE_PREFIX + "name_token_jaccard"
F_NAME_TOKEN_OVERLAP = FEATURE_PREFIX + "name_token_overlap"
F_NAME_SOUNDEX_EQ = FEATURE_PREFIX + "name_soundex_eq"
F_NAME_NUM_MATCH = FEATURE_PREFIX + "name_num_match"
F_NAME_LEN_MIN = FEATURE_PREFIX + "name_len_min"
F_NAME_LEN_MAX = FEATURE_PREFIX + "name_len_max"
F_ADDR_TOKEN_SET = FEATURE_PREFIX + "addr_token_set"
F_ADDR_LEV_NORM = FEATURE_PREFIX + "addr_lev_norm"
F_ADDR_NUM_MATCH = FEATURE_PREFIX + "addr_num_match"
F_CITY_EQ = FEATURE_PREFIX + "city_eq"
F_ZIP_EQ = FEATURE_PREFIX + "zip_eq"
F_PHONE_EQ = FEATURE_PREFIX + "phone_eq"
F_URL_EQ = FEATURE_PREFIX + "url_eq"
F_CAT_JACCARD = FEATURE_PREFIX + "cat_jaccard"
F_SAME_COUNTRY = FEATURE_PREFIX + "same_country"
F_FIELDS_AGREE = FEATURE_PREFIX + "fields_agree"
F_FIELDS_DISAGREE = FEATURE_PREFIX + "fields_disagree"

# --- contracts.py ---
# Helper columns that exist only while the output contract is checked.
OUTPUT_FIRST_MATCH = "first_match_id"
OUTPUT_ID_FOUND = "output_id"

# --- name statistics, frozen with the model (namestats.py) ---
N_NAME_FREQ = "n_name_freq"
N_NAME_IDF = "n_name_idf"
F_NAME_FREQ_MIN = FEATURE_PREFIX + "name_freq_min"
F_NAME_FREQ_MAX = FEATURE_PREFIX + "name_freq_max"
F_NAME_IDF_JACCARD = FEATURE_PREFIX + "name_idf_jaccard"
