// Command argocd-health runs an Argo CD health script with gopher-lua, the interpreter Argo CD
// embeds, in the same library set Argo CD opens (package, base, table; no string, math, io).
//
//	argocd-health SCRIPT.lua OBJECT.json
//
// prints {"status": ..., "message": ...}. tests/unit/test_argocd_health.py runs every fixture
// through it next to lupa's Lua 5.1, so number formatting and library gaps show up as Argo CD
// would show them.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

// toLua turns decoded JSON into Lua values; JSON null becomes nil, so the key disappears.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		table := state.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]any:
		table := state.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	}
	return lua.LNil
}

func run(scriptPath, objectPath string) (map[string]string, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(objectPath)
	if err != nil {
		return nil, err
	}
	var object any
	if err := json.Unmarshal(raw, &object); err != nil {
		return nil, err
	}
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage,
		lua.BaseLibName: lua.OpenBase,
		lua.TabLibName:  lua.OpenTable,
	} {
		if err := state.CallByParam(lua.P{Fn: state.NewFunction(open), Protect: true}, lua.LString(name)); err != nil {
			return nil, err
		}
	}
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(string(script)); err != nil {
		return nil, err
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	health := map[string]string{}
	result.ForEach(func(key, value lua.LValue) {
		health[lua.LVAsString(key)] = lua.LVAsString(value)
	})
	return health, nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health SCRIPT.lua OBJECT.json")
		os.Exit(2)
	}
	health, err := run(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(health); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
