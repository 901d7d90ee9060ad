# Writes the sojourn(1) man page from the built CLI's own --help text (cmake -P, at build time):
# help2man makes the page from `sojourn --help` and `--version`, and each subcommand's --help
# becomes a subsection of COMMANDS, so the page never drifts from the flags.
# In: SOJOURN_CLI, HELP2MAN, SUBCOMMANDS (;-list), OUTPUT (the .1 file), WORK (a scratch dir).
file(MAKE_DIRECTORY ${WORK})
set(include_file ${WORK}/sojourn.h2m)
file(WRITE ${include_file} "[COMMANDS]\n")
foreach(sub IN LISTS SUBCOMMANDS)
  execute_process(COMMAND ${SOJOURN_CLI} ${sub} --help OUTPUT_VARIABLE text RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "`sojourn ${sub} --help` failed (${rc})")
  endif()
  string(REPLACE "${SOJOURN_CLI}" "sojourn" text "${text}")  # "Usage: sojourn node ...", not the build path
  # Backslashes and leading dots would be read as roff requests.
  string(REPLACE "\\" "\\e" text "${text}")
  string(REGEX REPLACE "(^|\n)\\." "\\1\\\\&." text "${text}")
  file(APPEND ${include_file} ".SS \"sojourn ${sub}\"\n.nf\n${text}.fi\n")
endforeach()
file(APPEND ${include_file} "[FILES]\n.TP\n/etc/sojourn/NAME.conf\nthe flags of \\fBsojourn node\\fR for \\fBsojourn-node@NAME.service\\fR (see \\fB\\-\\-config\\fR).\n"
     ".TP\n/usr/libexec/sojourn/sojourn-guest\nthe static guest every process-jail and microVM run executes.\n"
     "[SEE ALSO]\n/usr/share/doc/sojourn/ (cli.md, deploy.md, security.md)\n")
execute_process(COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section 1
                        --name "code-mobility node and client" --include ${include_file} --output ${OUTPUT} ${SOJOURN_CLI}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "help2man failed (${rc})")
endif()
