# silo_generate_grain_code(OUT_VAR PROTOS a.proto ... [IMPORT_DIRS dir ...])
#   Runs protoc with --cpp_out and --silo_out; OUT_VAR receives the generated .cc files. The generated
#   headers land in ${SILO_GEN_DIR} (add it to the include path; silo::sdk does).
# silo_add_grain_library(NAME PROTOS a.proto ... [IMPORT_DIRS dir ...])
#   Builds libNAME.so holding the generated code of grain interfaces, for a plugin and a process that both
#   need them (an embedded client, a test): protobuf aborts when one .proto is registered twice in a process.
# silo_add_grain_plugin(NAME {PROTOS a.proto ... | INTERFACES lib ...} SOURCES x.cpp ... [IMPORT_DIRS dir ...]
#                       [LINK lib ...] [DEFINITIONS def ...])
#   Builds NAME.so, a grain plugin silod loads with `plugins.load: [NAME]`. PROTOS compiles the interfaces
#   into the plugin; INTERFACES links libraries made by silo_add_grain_library instead.

function(silo_generate_grain_code out_var)
  cmake_parse_arguments(ARG "" "" "PROTOS;IMPORT_DIRS" ${ARGN})
  if(NOT ARG_PROTOS)
    message(FATAL_ERROR "silo_generate_grain_code: PROTOS is required")
  endif()
  set(import_dirs ${ARG_IMPORT_DIRS})
  if(NOT import_dirs)
    list(GET ARG_PROTOS 0 first)
    get_filename_component(first "${first}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    get_filename_component(first_dir "${first}" DIRECTORY)
    set(import_dirs ${first_dir})
  endif()
  set(import_args)
  foreach(dir IN LISTS import_dirs)
    get_filename_component(dir ${dir} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    list(APPEND import_args -I ${dir})
  endforeach()
  list(APPEND import_args -I ${SILO_SDK_PROTO_DIR})
  set(generated)
  foreach(proto IN LISTS ARG_PROTOS)
    get_filename_component(abs ${proto} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    set(rel)
    foreach(dir IN LISTS import_dirs)
      get_filename_component(dir ${dir} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
      file(RELATIVE_PATH candidate ${dir} ${abs})
      if(NOT candidate MATCHES "^\\.\\.")
        set(rel ${candidate})
        break()
      endif()
    endforeach()
    if(NOT rel)
      message(FATAL_ERROR "silo_generate_grain_code: ${proto} is not under any of IMPORT_DIRS")
    endif()
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    set(outs ${SILO_GEN_DIR}/${stem}.pb.cc ${SILO_GEN_DIR}/${stem}.pb.h
             ${SILO_GEN_DIR}/${stem}.silo.cc ${SILO_GEN_DIR}/${stem}.silo.h)
    list(APPEND generated ${SILO_GEN_DIR}/${stem}.pb.cc ${SILO_GEN_DIR}/${stem}.silo.cc)
    # A plugin and a client in one directory may both need the code: one rule per directory and file.
    get_property(done DIRECTORY PROPERTY SILO_GENERATED_${stem})
    if(done)
      continue()
    endif()
    set_property(DIRECTORY PROPERTY SILO_GENERATED_${stem} TRUE)
    add_custom_command(
      OUTPUT ${outs}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${SILO_GEN_DIR}
      COMMAND protobuf::protoc --cpp_out=${SILO_GEN_DIR} --silo_out=${SILO_GEN_DIR}
              --plugin=protoc-gen-silo=${SILO_PROTOC_GEN_SILO} ${import_args} ${abs}
      DEPENDS ${abs} ${SILO_PROTOC_GEN_SILO_DEPENDS}
      COMMENT "protoc + protoc-gen-silo ${rel}"
      VERBATIM)
  endforeach()
  set(${out_var} ${generated} PARENT_SCOPE)
endfunction()

function(silo_add_grain_library name)
  cmake_parse_arguments(ARG "" "" "PROTOS;IMPORT_DIRS" ${ARGN})
  silo_generate_grain_code(generated PROTOS ${ARG_PROTOS} IMPORT_DIRS ${ARG_IMPORT_DIRS})
  add_library(${name} SHARED ${generated})
  target_include_directories(${name} PUBLIC ${SILO_GEN_DIR})
  target_link_libraries(${name} PUBLIC silo::sdk)
endfunction()

function(silo_add_grain_plugin name)
  cmake_parse_arguments(ARG "" "" "PROTOS;INTERFACES;SOURCES;IMPORT_DIRS;LINK;DEFINITIONS" ${ARGN})
  set(generated)
  if(ARG_PROTOS)
    silo_generate_grain_code(generated PROTOS ${ARG_PROTOS} IMPORT_DIRS ${ARG_IMPORT_DIRS})
  endif()
  add_library(${name} MODULE ${ARG_SOURCES} ${generated})
  target_include_directories(${name} PRIVATE ${SILO_GEN_DIR})
  target_link_libraries(${name} PRIVATE silo::sdk ${ARG_INTERFACES} ${ARG_LINK})
  target_compile_definitions(${name} PRIVATE ${ARG_DEFINITIONS})
  # Plugins export only their entry point and ABI record.
  set_target_properties(${name} PROPERTIES PREFIX "" CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
                                           LIBRARY_OUTPUT_DIRECTORY ${SILO_PLUGIN_OUTPUT_DIRECTORY})
endfunction()
