#pragma once
/// @file
/// Everything a grain author needs: `#include <silo/silo.hpp>`.

#include "silo/call_options.hpp"
#include "silo/error.hpp"
#include "silo/grain.hpp"
#include "silo/grain_ref.hpp"
#include "silo/logger.hpp"
#include "silo/persistent_state.hpp"
#include "silo/plugin.hpp"
#include "silo/reminder.hpp"
#include "silo/task.hpp"
#include "silo/types.hpp"
#include "silo/version.hpp"
