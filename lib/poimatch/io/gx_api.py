"""great_expectations' names that :mod:`poimatch.io.contracts` uses, in one module imported on
first use: importing GX costs ~5 CPU-seconds (GX itself, SciPy, SQLAlchemy, Altair), which a
command that validates nothing (evaluate, explain, a rollback, ``--help``, a configuration
error) should not pay. :mod:`poimatch.io.contracts` sets GX's analytics and logging first.
"""

from __future__ import annotations

import great_expectations as gx
from great_expectations.checkpoint.actions import UpdateDataDocsAction, ValidationAction
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.data_context.abstract_data_context import (
    AbstractDataContext,
)
from great_expectations.data_context.data_context.context_factory import (
    project_manager,
)
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.core.expect_column_pair_values_to_be_equal import (
    ExpectColumnPairValuesToBeEqual,
)
from great_expectations.expectations.core.expect_column_value_lengths_to_be_between import (
    ExpectColumnValueLengthsToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_between import (
    ExpectColumnValuesToBeBetween,
)
from great_expectations.expectations.core.expect_column_values_to_be_of_type import (
    ExpectColumnValuesToBeOfType,
)
from great_expectations.expectations.core.expect_column_values_to_be_unique import (
    ExpectColumnValuesToBeUnique,
)
from great_expectations.expectations.core.expect_column_values_to_not_be_null import (
    ExpectColumnValuesToNotBeNull,
)
from great_expectations.expectations.core.expect_table_columns_to_match_set import (
    ExpectTableColumnsToMatchSet,
)
from great_expectations.expectations.core.expect_table_row_count_to_equal import (
    ExpectTableRowCountToEqual,
)
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.row_conditions import PassThroughCondition

__all__ = [
    "AbstractDataContext",
    "BatchDefinition",
    "DataContextConfig",
    "ExpectColumnPairValuesToBeEqual",
    "ExpectColumnValueLengthsToBeBetween",
    "ExpectColumnValuesToBeBetween",
    "ExpectColumnValuesToBeOfType",
    "ExpectColumnValuesToBeUnique",
    "ExpectColumnValuesToNotBeNull",
    "ExpectTableColumnsToMatchSet",
    "ExpectTableRowCountToEqual",
    "Expectation",
    "InMemoryStoreBackendDefaults",
    "PassThroughCondition",
    "ProgressBarsConfig",
    "RunIdentifier",
    "UpdateDataDocsAction",
    "ValidationAction",
    "gx",
    "project_manager",
]
