#pragma once
/// @file
/// SDK version and plugin ABI version.

/// The plugin ABI this SDK speaks. Bumped on any change to the layout of the types in silo/detail/ or
/// silo/types.hpp, or to the order of virtual functions in silo::Grain and the runtime interfaces.
/// silod refuses a plugin built against another ABI before running any of its code.
#define SILO_ABI_VERSION 1
#define SILO_SDK_VERSION "0.1.0"
